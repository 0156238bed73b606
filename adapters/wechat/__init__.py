"""The `wechat` channel: WeChat Pay API v3, native payments (the merchant shows a QR code).

`protocol` holds the wire protocol (shared), `adapter` the gateway's side, `simulator` WeChat
Pay's side, `devkeys` the development keys. See `adapters.wechat.protocol` for the protocol.
"""
