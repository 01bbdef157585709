"""What both apps share: run config, wire protocol, RUN_DIR names, data, SSL tasks, privacy."""
