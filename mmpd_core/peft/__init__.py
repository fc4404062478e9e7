"""Parameter-efficient fine-tuning of pretrained encoders: PointGST's spectral adapters
(``pointgst``). Not yet a transfer protocol of the pipeline (issue #13)."""
