"""Where tasks run: local process pool, Parsl (and, with the clusters work, Ray and Dask)."""

from perfscale.engines.base import ENGINES, Engine, EngineStalled, engine_class, make_engine

__all__ = ["ENGINES", "Engine", "EngineStalled", "engine_class", "make_engine"]
