"""The built-in demo zoo: task generators, proxy pretraining, fine-tuning and the build command."""
