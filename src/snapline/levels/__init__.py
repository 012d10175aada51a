"""Checkpoint levels below the application: whole processes (``process``), seen from outside."""
