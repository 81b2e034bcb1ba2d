"""The core: every business rule and every use of storage, one module per resource.

Front ends (REST, GraphQL, protocols) parse their input into the models defined
here, call these functions and shape what they return. Nothing here knows about
HTTP or GraphQL.
"""
