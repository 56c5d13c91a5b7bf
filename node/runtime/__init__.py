"""What runs a job (torch): the deterministic executor and its numeric core, the model architectures, the packaged
MiniLM encoder, input tensors, and a collab participant's local training round.

    executor.py  `execute(spec, ...)`: inference, train, finetune, evaluate (what the sandbox's children call)
    compute.py   chunked forward passes, the training loop, argmax / top-k, metrics (the determinism rules)
    models.py    the architecture registry's torch modules (`build_model`, state-dict names)
    minilm.py    the packaged all-MiniLM-L6-v2 encoder in plain torch
    inputs.py    tokenization and input tensors of a spec
    collab.py    one collaborative training round in the sandbox, and test accuracy
"""
