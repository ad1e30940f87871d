"""Other libraries' APIs on the pruning_ir engine: :mod:`pruning_ir.compat.nni` (NNI's pruners and
``config_list``)."""
