"""LLM tabular generators: GReaT (rows written as text, a fine-tuned causal language model).

Modules: serialize (rows <-> text), training (models, fine-tuning, generation), smollm2 (the offline
SmolLM2-135M base model), params (hyperparameters), great (the `great` generator). Importing this package or
`great` imports no model library; torch, transformers and tokenizers are imported when a generator is used.
"""
