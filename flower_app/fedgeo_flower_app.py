"""The Flower App's components: the project's deployed ServerApp and ClientApp (``runners.fed_deploy``)."""

from runners.fed_deploy import client_app, server_app

__all__ = ["client_app", "server_app"]
