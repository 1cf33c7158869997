#!/usr/bin/env python3
"""Check an Alvryn token with PyJWT, a JWT library independent of ours.

usage: check_jwt.py TOKEN SECRET AUDIENCE ISSUER
prints the verified claims as JSON; exits 1 (with the PyJWT error class on
stderr) when PyJWT rejects the token.
"""
import json
import sys

import jwt

token, secret, audience, issuer = sys.argv[1:5]
try:
    claims = jwt.decode(
        token,
        secret.encode(),
        algorithms=["HS256"],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    header = jwt.get_unverified_header(token)
except jwt.PyJWTError as exc:
    print(type(exc).__name__, file=sys.stderr)
    sys.exit(1)
print(json.dumps({"header": header, "claims": claims}))
