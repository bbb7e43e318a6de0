"""Models: training through LLaMA-Factory, in-process inference, servers and generation through them, inputs."""
