"""Reconciliation against the channels' daily statements, and the daily settlement summary."""
