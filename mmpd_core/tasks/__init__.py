"""Downstream tasks on any encoder of the backbone contract: ``classification`` (full /
MLP-3 / MLP-Linear protocols, Table 3 and the ablation tables), ``fewshot`` (Table 1) and
``zeroshot`` (Table 2), with what they share in ``features`` (loading pretrained encoders,
frozen features) and ``metrics``."""
