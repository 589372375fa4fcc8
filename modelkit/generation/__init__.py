"""Generation: sampling options, the sampler, stop strings, the token loop and chat sessions."""
