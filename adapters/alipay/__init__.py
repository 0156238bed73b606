"""The `alipay` channel: Alipay open API (gateway.do, RSA2), face-to-face precreate (QR code).

`protocol` holds the wire protocol (shared) and `bill` the trade bill's format, `adapter` the
gateway's side, `simulator` Alipay's side, `devkeys` the development keys. See
`adapters.alipay.protocol` for the protocol itself.
"""
