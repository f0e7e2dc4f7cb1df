"""The web control surface's page (static/: HTML, CSS and JS), served by ``stembridge.bridge.web_server``."""
