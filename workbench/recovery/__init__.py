"""Recovery after pruning, UI-free: what a healing run does (`spec`), LoRA that keeps the cut (`lora`),
the training loop (`train`) and how a session keeps a run (`record`). The engine holds a finished run on
its model (`workbench.engine.healing`)."""
