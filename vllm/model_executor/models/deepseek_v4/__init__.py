"""DeepSeek V4 (Flash / Pro): one implementation for every platform, split by concept."""
