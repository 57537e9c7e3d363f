"""The local backend: transformers models on this machine, with its batching scheduler, sampler, KV cache, decoder, memory estimates and the tiny test models."""
