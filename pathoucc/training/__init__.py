"""Stage 4, training: one loop (:mod:`~pathoucc.training.loop`) that the UCC training
(:mod:`~pathoucc.training.train`, one step: :func:`~pathoucc.training.train.ucc_step`) and the refinement
(:mod:`pathoucc.cluster.refine`, one step: :func:`~pathoucc.cluster.refine.refine_step`) both run through; its
schedule, losses and train state beside it, with torchrun/DDP (``distributed``) and stop signals (``preempt``)."""
