terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.x for the split aws_s3_bucket_* resources and lifecycle rule filters.
      version = ">= 5.40, < 7.0"
    }
  }
}
