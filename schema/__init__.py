"""The GraphQL vocabulary resolvers speak: types, inputs, enums, the context, the caller, the limits."""
