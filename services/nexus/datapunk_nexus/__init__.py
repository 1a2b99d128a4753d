"""Datapunk."""
