"""The inference engines on the host (vLLM, llama.cpp's llama-server, Ollama, SGLang): found,
read from their own endpoints, normalized into one record each (perfd.engines.record), and
checked against perfd's plan."""
