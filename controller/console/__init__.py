"""The operator console: server-rendered pages over the same services as the API.

Pages are Jinja2 templates; forms post back and work without JavaScript; a small
script of ours refreshes the live parts. Everything, the stylesheet and script
included, is served by the controller itself, so the console works on a site LAN
with no internet. Who may do what is asked of ``controller/roles.py`` and the
services, exactly as the API asks.
"""
