"""Training: the step every trainer runs (``engine``) and its pure-PyTorch parts (optimiser groups,
schedule, checkpoints, the non-finite guard, fault hooks); the Ray Train worker loops (``loop``,
``finetune_loop``) with their typed configs (``loop_config``) and shared set-up (``worker``)."""
