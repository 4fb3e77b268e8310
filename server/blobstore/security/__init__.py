"""Who a caller is and what it may do, independent of the transport (gRPC or HTTP).

`tokens` (the tokens/identities file), `jwts` (JWT verification), `authority` (one
decision: credentials in, a Principal or a refusal out), `failures` (failed attempts
counted per peer, logged at a limited rate, slowed down).
"""
