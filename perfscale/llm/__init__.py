"""Language-model pieces of the GReaT generator (perfscale.generators.great): rows written as text.

Modules: serialize (rows <-> text), training (models, fine-tuning, generation), smollm2 (the offline
SmolLM2-135M base model), context (tables too wide for a model's context), params (hyperparameters). This
package imports nothing from perfscale.generators (the generator imports it: one way). Importing it imports no
model library; torch, transformers and tokenizers are imported when a generator is used.
"""
