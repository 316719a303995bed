"""Deployment across machines on Flower: the ServerApp, the ClientApp, local demos."""
