"""The `bank` channel: card payments through an acquiring bank's hosted payment page.

`protocol` holds the wire protocol (shared), `adapter` the gateway's side, `simulator` the
bank's side, `devkeys` the development keys. See `adapters.bank.protocol` for the protocol
itself.
"""
