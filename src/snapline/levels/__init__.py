"""Checkpoint levels coarser than the application: process (CRIU, DMTCP) and system (QEMU VMs)."""
