variable "bucket_name" {
  description = "Name of the bucket (VEGA_S3_BUCKET), globally unique, e.g. acme-vega-prod-blobs."
  type        = string
}

variable "prefix" {
  description = "Key prefix the application writes under (VEGA_S3_PREFIX), without slashes at either end, e.g. env/prod. The IAM policy grants only this prefix."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", var.prefix))
    error_message = "prefix must be segments of letters, digits, '.', '_' and '-' separated by single '/', as VEGA_S3_PREFIX requires."
  }
}

variable "kms_key_arn" {
  description = "KMS key for SSE-KMS (with S3 Bucket Keys); null encrypts with S3-managed keys (SSE-S3)."
  type        = string
  default     = null
}

variable "abort_incomplete_uploads_days" {
  description = "Days after which S3 aborts a multipart upload never completed: the backstop behind vega-admin gc, which aborts them after its grace period."
  type        = number
  default     = 3

  validation {
    condition     = var.abort_incomplete_uploads_days >= 1 && var.abort_incomplete_uploads_days <= 30
    error_message = "abort_incomplete_uploads_days must be from 1 to 30."
  }
}

variable "noncurrent_version_days" {
  description = "Days a deleted or replaced object's previous version is kept (the window to recover from a bad purge) before S3 expires it."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "access_log_bucket" {
  description = "Bucket that receives S3 server access logs; null turns access logging off."
  type        = string
  default     = null
}

variable "access_log_prefix" {
  description = "Key prefix of the access logs in access_log_bucket."
  type        = string
  default     = "s3-access/"
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
