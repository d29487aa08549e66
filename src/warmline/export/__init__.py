"""Export: a trained model to where people run chatbots (GGUF + Ollama Modelfile, a Hugging Face Space)."""
