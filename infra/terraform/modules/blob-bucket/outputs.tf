output "bucket_name" {
  description = "VEGA_S3_BUCKET."
  value       = aws_s3_bucket.this.bucket
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.this.arn
}

output "prefix" {
  description = "VEGA_S3_PREFIX."
  value       = var.prefix
}

output "app_policy_json" {
  description = "IAM policy document granting exactly the S3 (and KMS) actions Vega storage uses, on its prefix only; attach it to the task roles of the application and of vega-admin."
  value       = data.aws_iam_policy_document.app.json
}
