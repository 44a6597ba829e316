# Gunicorn settings used by `idp serve`: gunicorn -c config/gunicorn.conf.py
# The packaged copy (idp/gunicorn_conf.py) is what an installed wheel uses;
# a test keeps the two equal.
from idp.gunicorn_conf import *
