"""The GraphQL surface: types, inputs, enums, errors, permissions, context, the schema."""
