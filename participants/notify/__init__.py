"""Sample service: notify. Delivers reliable messages' e-mail steps over SMTP."""
