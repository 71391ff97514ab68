"""Export: the Hugging Face PyTorch folder with its parity check (huggingface), the model as
transformers loads it (pytorch), ONNX (onnx), PEFT adapters (peft), the model card (card),
and the modeling code a mean-pooled head needs (remote_code)."""
