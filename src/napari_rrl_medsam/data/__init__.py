"""Synthetic sample data (offline brain MRI phantom) for the plugin."""
