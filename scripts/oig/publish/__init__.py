"""Stage: publishing. The Hugging Face Hub, the model card, Together deployments, committing results."""
