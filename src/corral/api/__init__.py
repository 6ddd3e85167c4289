"""The HTTP API of ``corral serve``: the seed contract, the jobs API under ``/v1/`` and the health routes.

``corral.api.app.create_app`` builds the application; see ``docs/api.md``.
"""
