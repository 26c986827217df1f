"""MetaEmbed-Mini: the offline default model (MiniLM-L6 + visual tokenizer), its data and training."""
