"""The run directory: its layout and files, the rules that guard it, provenance, summaries."""
