"""The `unionpay` channel: UnionPay online gateway (银联全渠道) 5.1.0, merchant-presented QR codes.

`protocol` holds the wire protocol (shared) and `statement` the reconciliation file's format,
`adapter` the gateway's side, `simulator` UnionPay's side, `devkeys` the development
certificate hierarchy. See `adapters.unionpay.protocol` for the protocol itself.
"""
