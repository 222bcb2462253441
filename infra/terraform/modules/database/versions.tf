terraform {
  # 1.5 for variable validation against other variables' values and `check` blocks.
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.x for aws_vpc_security_group_ingress_rule and managed master passwords.
      version = ">= 5.40, < 7.0"
    }
  }
}
