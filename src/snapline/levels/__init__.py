"""Checkpoint levels coarser than the application: process (CRIU) and system (QEMU VMs)."""
