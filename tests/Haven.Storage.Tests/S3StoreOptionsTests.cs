using Haven.Core;
using Haven.Storage.S3;
using Xunit;

namespace Haven.Storage.Tests;

public sealed class S3StoreOptionsTests
{
    private static readonly Dictionary<string, string?> Credentials = new()
    {
        ["AWS_ACCESS_KEY_ID"] = "AKID",
        ["AWS_SECRET_ACCESS_KEY"] = "very-secret",
    };

    [Theory]
    [InlineData("s3:http://127.0.0.1:17480/backups", "http://127.0.0.1:17480", "backups", "")]
    [InlineData("s3:http://127.0.0.1:17480/backups/", "http://127.0.0.1:17480", "backups", "")]
    [InlineData("s3:http://127.0.0.1:17480/backups/laptops", "http://127.0.0.1:17480", "backups", "laptops")]
    [InlineData("s3:https://s3.example.com/backups/site/a/", "https://s3.example.com", "backups", "site/a")]
    [InlineData("s3:https://s3.example.com:443/b.u-c.k.e.t", "https://s3.example.com", "b.u-c.k.e.t", "")]
    [InlineData("s3:s3.example.com/backups/x", "https://s3.example.com", "backups", "x")]
    [InlineData("S3:HTTP://RGW.Example.com:8080//backups//x//y", "http://rgw.example.com:8080", "backups", "x/y")]
    public void Parse_SplitsTheUrl(string url, string endpoint, string bucket, string prefix)
    {
        var options = S3StoreOptions.Parse(url, Credentials);

        Assert.Equal(endpoint, options.Endpoint);
        Assert.Equal(bucket, options.Bucket);
        Assert.Equal(prefix, options.Prefix);
        Assert.Equal("AKID", options.AccessKey);
        Assert.Equal("very-secret", options.SecretKey);
        Assert.Equal("us-east-1", options.Region);
        Assert.True(options.PathStyle);
    }

    [Fact]
    public void Parse_TakesTheRegionFromTheEnvironment()
    {
        var environment = new Dictionary<string, string?>(Credentials) { ["AWS_REGION"] = "eu-west-1" };
        Assert.Equal("eu-west-1", S3StoreOptions.Parse("s3:https://h/b12", environment).Region);

        environment["AWS_DEFAULT_REGION"] = "eu-central-1";
        Assert.Equal("eu-central-1", S3StoreOptions.Parse("s3:https://h/b12", environment).Region);
    }

    [Theory]
    [InlineData("http://127.0.0.1/bucket", "not an S3 repository URL")]
    [InlineData("s3:ftp://host/bucket", "not a valid S3 repository URL")]
    [InlineData("s3:http://127.0.0.1:17480", "names no bucket")]
    [InlineData("s3:http://127.0.0.1:17480/", "names no bucket")]
    [InlineData("s3:http://127.0.0.1:17480/My_Bucket", "not a valid S3 bucket name")]
    [InlineData("s3:http://127.0.0.1:17480/ab", "not a valid S3 bucket name")]
    [InlineData("s3:http://127.0.0.1:17480/bucket/../other", "'..'")]
    [InlineData("s3:http://127.0.0.1:17480/bucket/x?versionId=1", "query")]
    public void Parse_RefusesMalformedUrls_WithAUsageError(string url, string expected)
    {
        var e = Assert.Throws<HavenException>(() => S3StoreOptions.Parse(url, Credentials));

        Assert.Equal(ErrorCode.Usage, e.Code);
        Assert.Contains(expected, e.Message);
        Assert.False(string.IsNullOrWhiteSpace(e.Hint));
    }

    [Fact]
    public void Parse_RefusesCredentialsInTheUrl_WithoutRepeatingThem()
    {
        var e = Assert.Throws<HavenException>(() => S3StoreOptions.Parse("s3:http://AKID:hunter2@127.0.0.1:17480/bucket", Credentials));

        Assert.Equal(ErrorCode.Usage, e.Code);
        Assert.DoesNotContain("hunter2", e.Message);
        Assert.Contains("AWS_SECRET_ACCESS_KEY", e.Hint);
    }

    [Theory]
    [InlineData(null, null, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set")]
    [InlineData("AKID", null, "AWS_SECRET_ACCESS_KEY is not set")]
    [InlineData(null, "secret", "AWS_ACCESS_KEY_ID is not set")]
    [InlineData("  ", "secret", "AWS_ACCESS_KEY_ID is not set")]
    public void Parse_NeedsCredentialsFromTheEnvironment(string? accessKey, string? secretKey, string expected)
    {
        var environment = new Dictionary<string, string?> { ["AWS_ACCESS_KEY_ID"] = accessKey, ["AWS_SECRET_ACCESS_KEY"] = secretKey };

        var e = Assert.Throws<HavenException>(() => S3StoreOptions.Parse("s3:http://127.0.0.1:17480/bucket", environment));

        Assert.Equal(ErrorCode.Usage, e.Code);
        Assert.Contains(expected, e.Message);
        Assert.Contains("s3:http://127.0.0.1:17480/bucket", e.Message);
    }

    [Fact]
    public void Location_AndToString_ShowNoSecret()
    {
        var options = S3StoreOptions.Parse("s3:http://127.0.0.1:17480/bucket/pre/fix", Credentials);

        Assert.Equal("s3:http://127.0.0.1:17480/bucket/pre/fix", options.Location);
        Assert.DoesNotContain("very-secret", options.ToString());
        Assert.Contains("AKID", options.ToString());
    }

    [Fact]
    public void S3Urls_AreRecognised()
    {
        Assert.True(S3StoreOptions.IsS3Url("s3:http://h/b"));
        Assert.False(S3StoreOptions.IsS3Url("/srv/backups"));
        Assert.False(S3StoreOptions.IsS3Url("s3"));
    }
}
