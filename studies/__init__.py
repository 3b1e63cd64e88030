"""The ablation study behind `ablation.py`: its configurations (configs), the study folder and
its records (folder), the main.py runs it starts (jobs) and the report it writes (report)."""
