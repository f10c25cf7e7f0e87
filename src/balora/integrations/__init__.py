"""Integrations with the wider PyTorch / Hugging Face ecosystem.

Each submodule imports its third-party dependency only when it is imported itself, so
``import balora`` never pulls in transformers, peft or accelerate:

    balora.integrations.distributed   torch.distributed helpers: unwrap a DDP / FSDP / accelerate
                                      model, per-rank reproducible noise, rank-0 atomic adapters
                                      and resumable checkpoints (torch only)
    balora.integrations.trainer       `BaLoRATrainer`: the Hugging Face Trainer with the ELBO's KL
                                      term (gradient accumulation and multi-process aware)
    balora.integrations.peft          `from_peft` / `to_peft`: start from a PEFT LoRA adapter,
                                      deploy the posterior mean as one
"""
