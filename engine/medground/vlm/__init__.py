"""VLM access through litellm: client, rate limits, images and prompts."""
