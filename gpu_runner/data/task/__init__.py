"""The tiny model's shipped fine-tuning task: answer every question in a fixed JSON shape."""
