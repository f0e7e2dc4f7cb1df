"""The shipped presets: effect chains, controller maps and scenes as TOML data (chains/, controllers/, scenes/)."""
