"""The admin console under /ui/: server-rendered pages (Jinja2 templates), one stylesheet and
one small script, all shipped inside the package, so it works with no internet and no build
step. Its pages read through the service layer like every handler; its actions are the /v1
operator endpoints, called by the script with the session cookie and the page's CSRF token.
"""
